"""Durable chain storage. `leveldb.py` is the only module that imports plyvel."""
