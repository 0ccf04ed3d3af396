"""Multimodal VAEs. Every model registers itself; ``available()`` lists them and ``build_model``
or ``load`` rebuilds one by name, which is how the command line and the GUI create models."""

from core.models._shared.annealing import TrainingProgress
from core.models._shared.free_bits import COLLAPSE_TERM_PREFIX
from core.models._shared.outputs import LossOutput, ModelOutput
from core.models._shared.subsets import subset_name
from core.models.base import (
    IncompleteDataError,
    ModalityError,
    MultimodalVAE,
    TrainingStage,
    UnknownOptionError,
    UnsupportedOperationError,
    load_bundle,
    save_bundle,
)
from core.models.cmvae import CMVAE, CMVAEConfig
from core.models.config import (
    BaseMultiVAEConfig,
    ConfigError,
    config_from_dict,
    config_schema,
    config_to_dict,
)
from core.models.crmvae import CRMVAE, CRMVAEConfig
from core.models.cvae import CVAE, CVAEConfig
from core.models.dmvae import DMVAE, DMVAEConfig
from core.models.jmvae import JMVAE, JMVAEConfig
from core.models.jnf import JNF, JNFConfig
from core.models.mhvae import MHVAE, MHVAEConfig
from core.models.mmvae import MMVAE, MMVAEConfig
from core.models.mmvae_plus import MMVAEPlus, MMVAEPlusConfig
from core.models.mopoe import MoPoE, MoPoEConfig
from core.models.mvae import MVAE, MVAEConfig
from core.models.mvtcae import MVTCAE, MVTCAEConfig
from core.models.nexus import Nexus, NexusConfig
from core.models.registry import available, build_model, get_model_class, register_model
from core.models.telbo import TELBO, TELBOConfig

load = load_bundle

__all__ = [
    "COLLAPSE_TERM_PREFIX",
    "CMVAE",
    "CMVAEConfig",
    "CRMVAE",
    "CRMVAEConfig",
    "CVAE",
    "CVAEConfig",
    "DMVAE",
    "DMVAEConfig",
    "JMVAE",
    "JMVAEConfig",
    "JNF",
    "JNFConfig",
    "MHVAE",
    "MHVAEConfig",
    "MMVAE",
    "MMVAEConfig",
    "MMVAEPlus",
    "MMVAEPlusConfig",
    "MoPoE",
    "MoPoEConfig",
    "MVAE",
    "BaseMultiVAEConfig",
    "ConfigError",
    "IncompleteDataError",
    "LossOutput",
    "MVAEConfig",
    "MVTCAE",
    "MVTCAEConfig",
    "ModalityError",
    "UnknownOptionError",
    "UnsupportedOperationError",
    "ModelOutput",
    "MultimodalVAE",
    "Nexus",
    "NexusConfig",
    "TELBO",
    "TELBOConfig",
    "TrainingProgress",
    "TrainingStage",
    "available",
    "build_model",
    "config_from_dict",
    "config_schema",
    "config_to_dict",
    "get_model_class",
    "load",
    "load_bundle",
    "register_model",
    "save_bundle",
    "subset_name",
]
