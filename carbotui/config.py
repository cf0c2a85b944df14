"""Node-local settings, under the name the rest of the code imports them by.

The model and the one loader are in carbotui.settings (which imports nothing else of
carbotui): every table and key, its type, default, checks and the Carbonio attribute it
mirrors. This module only re-exports them.
"""
from carbotui.settings import (  # noqa: F401
    BALANCE_METHODS, DEFAULT_PORTS, MAIL_PROTOCOLS, WEB_PROTOCOLS, AlertSettings, ConfigError,
    Endpoint, ListenSettings, MailLimits, MailSettings, RuleSettings, Settings, SmtpSettings,
    ThrottleSettings, WebSettings, keys, load, parse_endpoint, path_keys, read_toml)
