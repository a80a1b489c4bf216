"""The model: hook sites and interventions (`hooks`), the CPU kernels (`kernels`) and the
transformer with its functional wrapper `Model` (`transformer`)."""
from lab.model.transformer import Model

__all__ = ["Model"]
