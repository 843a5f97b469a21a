"""The numbers of the ISMS interface (ISMS.md §2, §3, §5), each an ``IntEnum``.

The two result-code columns of ISMS.md §2 differ for the same failure (decrypt is 2 in an
``idc_command`` answer, 1 in a ``999/`` file answer): two enums, never one.
"""

from __future__ import annotations

from enum import IntEnum


class CommandResult(IntEnum):
    """``idc_command`` resultCode (ISMS.md §2; mark (1): the PHP CU)."""

    OK = 0
    AUTH = 1  # pwdHash failed
    DECRYPT = 2
    HASH = 3
    UNZIP = 4
    XML_FORMAT = 5
    XML_CONTENT = 6
    OTHER = 999  # wrong idcId, randVal > 20, duplicate commandId/commandSequence, unknown type or version


class FileResult(IntEnum):
    """The code in a ``999/<DT>-<name>-<code>`` answer file (ISMS.md §2; mark (1): Aotain)."""

    OK = 0
    DECRYPT = 1
    HASH = 2
    UNZIP = 3
    FORMAT = 4
    VERSION = 5
    REPORT_TYPE = 51
    NODE_TOO_LONG = 52
    NODE_TYPE = 53
    NODE_CONTENT = 54
    NODE_MISSING = 55
    RETRY = 900
    PROCESSING = 999


class HashAlgorithm(IntEnum):
    NONE = 0
    MD5 = 1
    SHA1 = 2


class EncryptAlgorithm(IntEnum):
    NONE = 0
    AES_CBC = 1


class Compression(IntEnum):
    NONE = 0
    ZIP = 1
    GZIP = 2


class CommandType(IntEnum):
    """``idc_command`` commandType (ISMS.md §3)."""

    BASIC_DATA = 0  # 基础数据管理 (CU-lite)
    LOG_QUERY = 1  # 访问日志查询
    SECURITY = 2  # 信息安全管理: command, blacklist, noFilter
    COMMAND_QUERY = 3  # 管理指令查询
    CODE_LIST = 4  # 代码表发布
    ACTIVE_PERIOD = 5  # 活跃资源上报周期 (≠: com.act reads 基础数据查询)
    SECURITY_QUERY = 6  # 信息安全查询


class RuleSubtype(IntEnum):
    """gzlx 规则类型 (ISMS.md §5, (2+))."""

    DOMAIN = 1
    URL = 2
    KEYWORD = 3
    SRC_IP = 4
    DST_IP = 5
    SRC_PORT = 6
    DST_PORT = 7
    PROTOCOL = 8


RULE_NAMES = {1: "域名", 2: "URL", 3: "关键字", 4: "源IP", 5: "目的IP", 6: "源端口", 7: "目的端口", 8: "传输层协议"}


class SecurityType(IntEnum):
    """``<command><type>``: 1 监测 (monitor), 2 过滤/封堵 (filter)."""

    MONITOR = 1
    FILTER = 2


class AckType(IntEnum):
    """DT 10 ack type per command (ISMS.md §3, (2+))."""

    MONITOR = 1
    FILTER = 2
    BASIC_DATA = 3
    CODE_LIST = 4
    NO_FILTER = 5
    BLACKLIST = 6
    QUERY_VIEW = 7
    COMMAND_RECORD = 8


class AckResult(IntEnum):
    """DT 10 resultCode: 0 all executed, 1 some, 2 none ((1))."""

    ALL = 0
    SOME = 1
    NONE = 2


class Protocol(IntEnum):
    """ISMI protocol codes: 1 TCP, 2 UDP, not IANA's 6/17 ((2+))."""

    TCP = 1
    UDP = 2


class IllegalType(IntEnum):
    """wfwgqk 违法违规情况 (ISMS.md §5)."""

    NORMAL = 0
    UNFILED = 1  # 未备案
    ILLEGAL = 2
    OTHER = 999


class DataType(IntEnum):
    """Data types (ISMS.md §4) that beiand writes."""

    BASIC_INFO = 1  # 基础数据 (basicInfo): beiand's reconstruction (docs/isms.md)
    IDC_MONITOR = 2
    LOG_QUERY_RESULT = 3
    MONITOR_RESULT = 4
    FILTER_RESULT = 5
    COMMAND_QUERY_RESULT = 6
    ACTIVE_STATE = 7
    ACTIVE_RESOURCES = 8
    ILLEGAL_WEB = 9
    COMMAND_ACK = 10
