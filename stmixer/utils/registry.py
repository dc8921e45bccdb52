"""Name -> builder tables, so that adding a backbone or detector touches one file."""


class Registry:
    """Maps one or more names to a builder; ``get`` explains what exists when a name is unknown.

    Example::

        BACKBONES = Registry("backbone", config_key="MODEL.BACKBONE.CONV_BODY")

        @BACKBONES.register("PySlowfast-R50", "PySlowfast-R101")
        def build_slowfast(cfg): ...

        model = BACKBONES.get(cfg.MODEL.BACKBONE.CONV_BODY)(cfg)
    """

    def __init__(self, kind, config_key):
        self.kind = kind
        self.config_key = config_key
        self._builders = {}

    def register(self, *names):
        """Decorator registering a builder under every name in ``names``."""
        if not names:
            raise ValueError(f"{self.kind} registry: register() needs at least one name")

        def decorator(builder):
            for name in names:
                if name in self._builders:
                    raise KeyError(f"{self.kind} {name!r} is already registered")
                self._builders[name] = builder
            return builder

        return decorator

    def get(self, name):
        """The builder registered as ``name``; KeyError naming the config key and the choices otherwise."""
        if name not in self._builders:
            choices = ", ".join(sorted(self._builders)) or "none registered"
            raise KeyError(f"{self.config_key} = {name!r} is not a known {self.kind}; choices: {choices}")
        return self._builders[name]

    def names(self):
        """All registered names, sorted."""
        return sorted(self._builders)

    def __contains__(self, name):
        return name in self._builders
