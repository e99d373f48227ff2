from cardforge.core.config.schemas import CardforgeConfig, register_configs

__all__ = ["CardforgeConfig", "register_configs"]
