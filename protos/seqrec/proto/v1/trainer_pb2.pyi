import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from seqrec.proto.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SequenceSampling(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEQUENCE_SAMPLING_UNSPECIFIED: _ClassVar[SequenceSampling]
    SEQUENCE_SAMPLING_SLIDING_WINDOW: _ClassVar[SequenceSampling]
    SEQUENCE_SAMPLING_LAST: _ClassVar[SequenceSampling]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
SEQUENCE_SAMPLING_UNSPECIFIED: SequenceSampling
SEQUENCE_SAMPLING_SLIDING_WINDOW: SequenceSampling
SEQUENCE_SAMPLING_LAST: SequenceSampling
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState

class Hyperparameters(_message.Message):
    __slots__ = ("max_len", "sampling", "window_stride", "mask_ratio", "last_item_mask_share", "hidden_size", "depth", "heads", "batch_size", "epochs", "lr", "dropout", "weight_tying", "grad_clip", "use_attention_mask", "negative_samples", "top_k", "patience", "seed", "weight_decay", "eval_every", "id_dropout", "new_item_exposure", "next_item_context_ratio", "refit_share", "time_budget", "causal")
    MAX_LEN_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    WINDOW_STRIDE_FIELD_NUMBER: _ClassVar[int]
    MASK_RATIO_FIELD_NUMBER: _ClassVar[int]
    LAST_ITEM_MASK_SHARE_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_TYING_FIELD_NUMBER: _ClassVar[int]
    GRAD_CLIP_FIELD_NUMBER: _ClassVar[int]
    USE_ATTENTION_MASK_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    PATIENCE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    EVAL_EVERY_FIELD_NUMBER: _ClassVar[int]
    ID_DROPOUT_FIELD_NUMBER: _ClassVar[int]
    NEW_ITEM_EXPOSURE_FIELD_NUMBER: _ClassVar[int]
    NEXT_ITEM_CONTEXT_RATIO_FIELD_NUMBER: _ClassVar[int]
    REFIT_SHARE_FIELD_NUMBER: _ClassVar[int]
    TIME_BUDGET_FIELD_NUMBER: _ClassVar[int]
    CAUSAL_FIELD_NUMBER: _ClassVar[int]
    max_len: int
    sampling: SequenceSampling
    window_stride: int
    mask_ratio: float
    last_item_mask_share: float
    hidden_size: int
    depth: int
    heads: int
    batch_size: int
    epochs: int
    lr: float
    dropout: float
    weight_tying: bool
    grad_clip: float
    use_attention_mask: bool
    negative_samples: int
    top_k: int
    patience: int
    seed: int
    weight_decay: float
    eval_every: int
    id_dropout: float
    new_item_exposure: float
    next_item_context_ratio: float
    refit_share: float
    time_budget: float
    causal: bool
    def __init__(self, max_len: _Optional[int] = ..., sampling: _Optional[_Union[SequenceSampling, str]] = ..., window_stride: _Optional[int] = ..., mask_ratio: _Optional[float] = ..., last_item_mask_share: _Optional[float] = ..., hidden_size: _Optional[int] = ..., depth: _Optional[int] = ..., heads: _Optional[int] = ..., batch_size: _Optional[int] = ..., epochs: _Optional[int] = ..., lr: _Optional[float] = ..., dropout: _Optional[float] = ..., weight_tying: _Optional[bool] = ..., grad_clip: _Optional[float] = ..., use_attention_mask: _Optional[bool] = ..., negative_samples: _Optional[int] = ..., top_k: _Optional[int] = ..., patience: _Optional[int] = ..., seed: _Optional[int] = ..., weight_decay: _Optional[float] = ..., eval_every: _Optional[int] = ..., id_dropout: _Optional[float] = ..., new_item_exposure: _Optional[float] = ..., next_item_context_ratio: _Optional[float] = ..., refit_share: _Optional[float] = ..., time_budget: _Optional[float] = ..., causal: _Optional[bool] = ...) -> None: ...

class TrainingRequest(_message.Message):
    __slots__ = ("data_uri", "items_uri", "user_column", "item_column", "timestamp_column", "metadata_columns", "display_name_column", "min_user_interactions", "min_item_interactions", "preset", "hyperparameters", "publish_on_success", "description", "timestamp_unit")
    DATA_URI_FIELD_NUMBER: _ClassVar[int]
    ITEMS_URI_FIELD_NUMBER: _ClassVar[int]
    USER_COLUMN_FIELD_NUMBER: _ClassVar[int]
    ITEM_COLUMN_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_COLUMN_FIELD_NUMBER: _ClassVar[int]
    METADATA_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_COLUMN_FIELD_NUMBER: _ClassVar[int]
    MIN_USER_INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    MIN_ITEM_INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_ON_SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_UNIT_FIELD_NUMBER: _ClassVar[int]
    data_uri: str
    items_uri: str
    user_column: str
    item_column: str
    timestamp_column: str
    metadata_columns: _containers.RepeatedScalarFieldContainer[str]
    display_name_column: str
    min_user_interactions: int
    min_item_interactions: int
    preset: str
    hyperparameters: Hyperparameters
    publish_on_success: bool
    description: str
    timestamp_unit: str
    def __init__(self, data_uri: _Optional[str] = ..., items_uri: _Optional[str] = ..., user_column: _Optional[str] = ..., item_column: _Optional[str] = ..., timestamp_column: _Optional[str] = ..., metadata_columns: _Optional[_Iterable[str]] = ..., display_name_column: _Optional[str] = ..., min_user_interactions: _Optional[int] = ..., min_item_interactions: _Optional[int] = ..., preset: _Optional[str] = ..., hyperparameters: _Optional[_Union[Hyperparameters, _Mapping]] = ..., publish_on_success: _Optional[bool] = ..., description: _Optional[str] = ..., timestamp_unit: _Optional[str] = ...) -> None: ...

class JobRef(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class TrainingWarning(_message.Message):
    __slots__ = ("code", "message", "suggestion")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SUGGESTION_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    suggestion: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., suggestion: _Optional[str] = ...) -> None: ...

class TrainingEvent(_message.Message):
    __slots__ = ("job_id", "state", "epoch", "total_epochs", "loss", "validation", "message", "warnings", "bundle_path", "bundle_version", "time", "progress")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TOTAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_PATH_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: JobState
    epoch: int
    total_epochs: int
    loss: float
    validation: _common_pb2.Metrics
    message: str
    warnings: _containers.RepeatedCompositeFieldContainer[TrainingWarning]
    bundle_path: str
    bundle_version: str
    time: _timestamp_pb2.Timestamp
    progress: float
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., epoch: _Optional[int] = ..., total_epochs: _Optional[int] = ..., loss: _Optional[float] = ..., validation: _Optional[_Union[_common_pb2.Metrics, _Mapping]] = ..., message: _Optional[str] = ..., warnings: _Optional[_Iterable[_Union[TrainingWarning, _Mapping]]] = ..., bundle_path: _Optional[str] = ..., bundle_version: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., progress: _Optional[float] = ...) -> None: ...

class TrainingJob(_message.Message):
    __slots__ = ("job_id", "state", "request", "created_at", "started_at", "finished_at", "last_event", "metrics", "bundle_version", "bundle_path", "error", "warnings")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_PATH_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: JobState
    request: TrainingRequest
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    last_event: TrainingEvent
    metrics: _common_pb2.Metrics
    bundle_version: str
    bundle_path: str
    error: str
    warnings: _containers.RepeatedCompositeFieldContainer[TrainingWarning]
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., request: _Optional[_Union[TrainingRequest, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_event: _Optional[_Union[TrainingEvent, _Mapping]] = ..., metrics: _Optional[_Union[_common_pb2.Metrics, _Mapping]] = ..., bundle_version: _Optional[str] = ..., bundle_path: _Optional[str] = ..., error: _Optional[str] = ..., warnings: _Optional[_Iterable[_Union[TrainingWarning, _Mapping]]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[TrainingJob]
    def __init__(self, jobs: _Optional[_Iterable[_Union[TrainingJob, _Mapping]]] = ...) -> None: ...

class BundleInfo(_message.Message):
    __slots__ = ("version", "path", "created_at", "metrics", "live", "job_id", "model")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    version: str
    path: str
    created_at: _timestamp_pb2.Timestamp
    metrics: _common_pb2.Metrics
    live: bool
    job_id: str
    model: _common_pb2.ModelInfo
    def __init__(self, version: _Optional[str] = ..., path: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., metrics: _Optional[_Union[_common_pb2.Metrics, _Mapping]] = ..., live: _Optional[bool] = ..., job_id: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ...) -> None: ...

class ListBundlesRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ListBundlesResponse(_message.Message):
    __slots__ = ("bundles", "live_version")
    BUNDLES_FIELD_NUMBER: _ClassVar[int]
    LIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    bundles: _containers.RepeatedCompositeFieldContainer[BundleInfo]
    live_version: str
    def __init__(self, bundles: _Optional[_Iterable[_Union[BundleInfo, _Mapping]]] = ..., live_version: _Optional[str] = ...) -> None: ...

class PublishBundleRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class RollbackBundleRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...
