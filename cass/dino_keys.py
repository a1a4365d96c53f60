"""Deprecated name of :mod:`cass.vfm_keys` (and of :mod:`cass.backbones`' VFM table), kept for old imports."""
import warnings
from .backbones import VFM_SPECS, VFMSpec, vfms_with_heads  # noqa: F401
from .vfm_keys import embed_tokens, keys_on_clip_grid, last_block_keys  # noqa: F401
warnings.warn("cass.dino_keys is deprecated: import cass.vfm_keys and cass.backbones", DeprecationWarning, stacklevel=2)
