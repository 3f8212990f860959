"""fundgap: Bayesian multilevel re-analysis of medical crowdfunding outcomes in China.

The data flow is one way: a data folder is validated (`contract`), turned into an
analysis-ready table (`prepare`), and later fitted. `simulate` writes data folders with
known truth.
"""

from fundgap.contract import Dataset, Problem, load_dataset, validate
from fundgap.errors import DataContractError, FundgapError
from fundgap.prepare import PreparedData, PrepareOptions, prepare

__version__ = "0.1.0"

__all__ = [
    "DataContractError",
    "Dataset",
    "FundgapError",
    "PrepareOptions",
    "PreparedData",
    "Problem",
    "__version__",
    "load_dataset",
    "prepare",
    "validate",
]
