"""The ``.cinr`` file: its container (``format.container``: bytes, index, checksums), its
header (``format.header``: the one JSON schema) and the block grid it describes (``format.grid``).
Nothing here imports torch."""
