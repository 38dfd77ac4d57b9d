"""Analysis of trained models: cluster maps of voxel embeddings (:mod:`.clusters`) and
what drives a region (:mod:`.regions`)."""

from ._common import AnalysisCancelled, AnalysisError
from .clusters import (ClusterMaps, ClusterResult, cluster_embeddings, cluster_labels_volume, cluster_maps,
                       cluster_mean_responses, cluster_table, cluster_top_images)
from .regions import TopImages, region_scores, top_images

__all__ = ["AnalysisCancelled", "AnalysisError", "ClusterMaps", "ClusterResult", "cluster_embeddings",
           "cluster_labels_volume", "cluster_maps", "cluster_mean_responses", "cluster_table", "cluster_top_images",
           "TopImages", "region_scores", "top_images"]
