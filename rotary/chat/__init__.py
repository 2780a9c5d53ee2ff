"""Chat: templates that render conversations, and the SFT examples built from them."""

from rotary.chat.template import CHAT_SPECIALS, DEFAULT_TEMPLATE, TURN_END, TURN_START, check_messages, render

__all__ = ["CHAT_SPECIALS", "DEFAULT_TEMPLATE", "TURN_END", "TURN_START", "check_messages", "render"]
