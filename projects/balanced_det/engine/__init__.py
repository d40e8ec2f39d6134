from .checkpoint import Checkpointer, CheckpointLoadError, WeightsDownloadError
from .launch import create_ddp_model, launch
from .train_loop import build_model, do_test, do_train
from .trainer import NonFiniteLossError, Trainer

__all__ = [k for k in globals() if not k.startswith("_")]
