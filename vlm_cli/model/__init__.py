"""The model layer. Importing it registers, with the hub layer below, which weights a
checkpoint's family never loads (:func:`vlm_cli.hub.set_skip_for`): the hub knows no family."""

from vlm_cli.hub import set_skip_for
from vlm_cli.model.families import skipped_for_config

set_skip_for(skipped_for_config)
