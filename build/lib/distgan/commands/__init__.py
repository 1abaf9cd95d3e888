"""The bodies of distgan's command-line programs other than training (``distgan-sample``,
``distgan-evaluate``; ``launch/sample.py``, ``launch/evaluate.py``). Training's is distgan/launcher/main.py."""
