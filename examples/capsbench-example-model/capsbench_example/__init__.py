"""An example of a model kept outside capsbench: installed with pip, found by its entry point."""
