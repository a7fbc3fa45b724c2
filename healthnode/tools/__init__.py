"""The tools around the node: the bench (`healthnode bench`), the consensus simulator
(`healthnode sim`), the nemesis (`healthnode nemesis`) and the soak (`healthnode soak`). They
drive real nodes through `tools/launcher.py`, or the pure core directly; the node never imports
them."""
