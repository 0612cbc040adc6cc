"""One module per CLI stage; each exposes a config dataclass and ``run(cfg)``."""
