"""OpenVINO graph rewrites of scap-ov, installed as ``scap_ov.transformations``.

- ``weights``: recognise an FC's weight input (a constant or an NNCF decompression chain).
- ``portable``: pass A, insert mode-centering + pruning (standard opset) in front of each calibrated FC.
- ``fuse_cpu``: pass B, fuse each pruning pattern and its weights into one ``SCAPFullyConnected`` op.
"""
