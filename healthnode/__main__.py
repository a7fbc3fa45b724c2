from healthnode.cli import main

raise SystemExit(main())
