"""LGGAN models: generator (encoder, SPADE global, local class-specific, weight map), multiscale
discriminator, VGG19 features and the model wrapper that computes all losses."""
from .discriminator import MultiscaleDiscriminator, NLayerDiscriminator
from .layers import OneHotConv2d, instance_edges
from .lggan import GeneratorOutput, LGGANGenerator, LGGANModel
from .vgg import VGG19Features, VGGWeightsNotFoundError, default_vgg19_path

__all__ = [
    "LGGANGenerator", "MultiscaleDiscriminator", "NLayerDiscriminator", "LGGANModel", "GeneratorOutput",
    "VGG19Features", "VGGWeightsNotFoundError", "default_vgg19_path", "OneHotConv2d", "instance_edges",
]
