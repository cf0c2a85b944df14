"""carbotui: a Carbonio-style mail proxy node with a Textual dashboard."""
__version__ = "0.1.0"
