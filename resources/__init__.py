from resources.compute import ComputeBackendResource
from resources.corpus import CorpusResource
from resources.device import TorchDeviceResource
from resources.labeler import LabelerResource
from resources.model import ModelResource

__all__ = ["ComputeBackendResource", "CorpusResource", "LabelerResource", "ModelResource", "TorchDeviceResource"]
