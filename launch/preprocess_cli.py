"""Console entry point `s2s-preprocess`.

pipeline/preprocess.py imports Apache Beam when it loads, and pipeline/ never imports
launch/, so the missing-extra hint has to come from here, before that import.
"""

from launch import extras


def run() -> None:
    extras.require("s2s-preprocess", "apache_beam")
    from pipeline import preprocess
    preprocess.run()
