"""What the test modules share: ports, config text, raw sockets, problem checks, a private
Redis, credentials and metric readers. Import from here, not from other test modules."""

from tests.support.config import plugin_table, proxy_config
from tests.support.ports import free_port
from tests.support.problems import PROBLEM_KEYS, assert_no_internal_address, assert_problem, read_problem
from tests.support.raw import (
    IO_TIMEOUT,
    RawHead,
    RawResponse,
    parse_request_head,
    raw_connection,
    raw_exchange,
    raw_status,
    raw_upstream,
    read_request_head,
    read_response,
)
from tests.support.redis_server import RedisServer, redis_binary
from tests.support.scraping import metric, metric_of, scrape, url, wait_for

__all__ = [
    "IO_TIMEOUT", "PROBLEM_KEYS", "RawHead", "RawResponse", "RedisServer", "assert_no_internal_address",
    "assert_problem", "free_port", "metric", "metric_of", "parse_request_head", "plugin_table", "proxy_config",
    "raw_connection", "raw_exchange", "raw_status", "raw_upstream", "read_problem", "read_request_head",
    "read_response", "redis_binary", "scrape", "url", "wait_for",
]
