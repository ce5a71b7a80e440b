"""The environment model: catalog + shared settings + one stack file -> a validated `Environment`."""

from config.load import ConfigError, Problem, StackInput, from_pulumi_runtime, load_environment, read_stack_file
from config.model import Environment, Service
from config.rules import StoreUrl, service_env

__all__ = [
    "ConfigError", "Environment", "Problem", "Service", "StackInput", "StoreUrl",
    "from_pulumi_runtime", "load_environment", "read_stack_file", "service_env",
]
