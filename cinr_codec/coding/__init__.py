"""Block representations behind one seam (``coding.base.BlockCodec``, chosen by
``coding.registry``), the hash-grid representation (``coding.hashgrid``), tensor storage
(``coding.quant``, ``coding.tensors``) and image blocks (``coding.images``). The entropy-coded
representations land here."""
