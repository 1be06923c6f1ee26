"""Models: LGGAN (semantic synthesis), ECGAN, LGGAN cross-view; generators, discriminators, VGG19
features, the label generator, and ``build_model`` (model class from the config type).

Every model exposes generate / generator_loss / discriminator_loss / generator_parameters /
discriminator_parameters and attributes ``generator`` and ``discriminator``; generator outputs have at
least ``.final``, and ``sample_columns()`` where the trainer's sample grid should show more than
LGGAN's columns. A model may define ``condition(batch)``: the third model argument taken from a data
batch (cross-view: the source view); otherwise the trainer passes the instance map.
"""
from .crossview import CrossViewGenerator, CrossViewModel, CrossViewOutput, DualDiscriminator
from .discriminator import MultiscaleDiscriminator, NLayerDiscriminator
from .ecgan import ECGANGenerator, ECGANModel, ECGANOutput
from .layers import OneHotConv2d, instance_edges
from .lggan import GeneratorOutput, LGGANGenerator, LGGANModel
from .segmenter import LabelGenerator, SmallSegNet, build_label_generator
from .vgg import VGG19Features, VGGWeightsNotFoundError, default_vgg19_path

__all__ = [
    "LGGANGenerator", "MultiscaleDiscriminator", "NLayerDiscriminator", "LGGANModel", "GeneratorOutput",
    "VGG19Features", "VGGWeightsNotFoundError", "default_vgg19_path", "OneHotConv2d", "instance_edges",
    "ECGANGenerator", "ECGANModel", "ECGANOutput", "CrossViewGenerator", "CrossViewModel", "CrossViewOutput",
    "DualDiscriminator", "LabelGenerator", "SmallSegNet", "build_label_generator", "build_model",
    "build_inference_model", "build_generator_fn",
]


def _model_config(cfg):
    """The model config of an ExperimentConfig, or cfg itself."""
    from ..config import ExperimentConfig

    return cfg.model if isinstance(cfg, ExperimentConfig) else cfg


def build_model(cfg):
    """The model for an ``ExperimentConfig`` or a model config: LGGANConfig -> LGGANModel, ECGANConfig ->
    ECGANModel, CrossViewConfig -> CrossViewModel."""
    from ..config import model_type_of

    model_cfg = _model_config(cfg)
    model_type = model_type_of(model_cfg)
    if model_type == "ecgan":
        return ECGANModel(model_cfg)
    if model_type == "lggan-crossview":
        return CrossViewModel(model_cfg)
    return LGGANModel(model_cfg)


def build_inference_model(cfg, state: dict | None = None):
    """A model for generation only: no VGG, no label generator, no memory bank (training-only parts);
    with ``state`` (a ``semgan train`` checkpoint's "model" dict) the generator weights are loaded
    strictly. Raises ValueError when they do not fit the config."""
    import dataclasses

    from ..config import ECGANConfig

    model_cfg = dataclasses.replace(_model_config(cfg), use_vgg=False)
    if isinstance(model_cfg, ECGANConfig):
        model_cfg = dataclasses.replace(model_cfg, use_label_generator=False, memory_bank=False)
    model = build_model(model_cfg)
    if state is not None:
        prefix = "generator."
        weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        try:
            model.generator.load_state_dict(weights)
        except RuntimeError as exc:
            raise ValueError(f"checkpoint weights do not fit the generator of its config: {exc}") from exc
    return model


def build_generator_fn(state: dict, device="cpu"):
    """For ``semgan_fast.eval.evaluate(..., generator_fn=...)``: a function batch dict -> final images
    [B,3,H,W] for a ``semgan train`` checkpoint of any model type (the model's third input from
    ``model.condition(batch)`` when defined, e.g. the cross-view source view, else the instance map)."""
    import torch

    from ..config import ExperimentConfig

    cfg = ExperimentConfig.from_dict(state["config"])
    model = build_inference_model(cfg, state["model"]).to(device).eval()
    condition = getattr(model, "condition", None)

    @torch.no_grad()
    def generate(batch: dict) -> torch.Tensor:
        if condition is not None:
            third = condition(batch)
        else:
            third = batch["instance"] if cfg.model.use_instance_edge else None
        return model.generate(batch["label"], third).final

    return generate
