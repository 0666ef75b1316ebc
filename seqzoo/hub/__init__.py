"""Publishing seqzoo checkpoints: a self-contained Hub export (flat code bundle for ``trust_remote_code``), model
cards rendered from ``seqzoo/hub_cards/`` templates, and upload through huggingface_hub.

    from seqzoo.hub import export_folder, publish
    export_folder("my-lstm", "my-lstm-hub", repo_id="me/my-lstm")   # build the repository folder only
    publish("my-lstm", "me/my-lstm", private=True)                    # build it and upload it in one commit
    refresh_code("me/my-lstm")                                        # rewrite only its code with this seqzoo
"""

from seqzoo.hub.bundle import Bundle, BundleError, build_bundle
from seqzoo.hub.cards import DEFAULT_LICENSE, TRAINING_FILE, load_training_record, render_model_card
from seqzoo.hub.publishing import PublishError, build_hub_folder, export_folder, publish, refresh_code

__all__ = [
    "DEFAULT_LICENSE",
    "TRAINING_FILE",
    "Bundle",
    "BundleError",
    "PublishError",
    "build_bundle",
    "build_hub_folder",
    "export_folder",
    "load_training_record",
    "publish",
    "refresh_code",
    "render_model_card",
]
