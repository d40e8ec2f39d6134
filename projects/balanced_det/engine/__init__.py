from .checkpoint import Checkpointer, CheckpointLoadError, WeightsDownloadError
from .launch import create_ddp_model, launch
from .train_loop import build_model, build_train_loader, do_test, do_train, training_seed
from .trainer import NonFiniteLossError, Trainer

__all__ = [k for k in globals() if not k.startswith("_")]
