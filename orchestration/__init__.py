import warnings

import dagster as dg

# Partitioned asset checks are a preview feature we rely on deliberately; say so once, here.
warnings.filterwarnings("ignore", category=dg.PreviewWarning)
