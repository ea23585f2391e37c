"""The web demo from a checkout: ``python app.py [--port 7860] ...``, the same as ``styletransfer demo``."""
from styletransfer.demo import main

main()
