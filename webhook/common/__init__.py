"""What the shells share and the engine does not need: reading input within bounds
(``inputs``), the mesh config from its file (``mesh_config``), and the signer's names
(``names``). It imports only the engine; every shell may import it.
"""
