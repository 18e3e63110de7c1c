"""Encoding: slide reading (``source``), tissue detection, mips, the resumable journal, one
block's encode (``block``), whole slides (``slide``), single images (``image``) and training
(``train``). Decoding never imports this package."""
