#!/usr/bin/env python3
"""A terminal chat with the bot, through the offline Bot API stand-in.

You are a Telegram user; what you type becomes an update the relay picks up
from the stand-in, and the bot's replies are printed as they arrive.

  text          send a message (your name, a phone number, /start, /status, /cancel ...)
  1, 2, ...     press the numbered button of the last keyboard (a number with
                no such button is sent as text: 89161234567 is a phone number)
  /admin        what waits for review (you are an admin in the offline demo)
  /contact      share your phone number (the contact button)
  /photo NAME   send a bundled sample image as a photo: passport or selfie
  /quit         leave the chat (the system keeps running; scripts/down.sh stops it)
"""
import json
import os
import re
import sys
import time
import urllib.request

API = os.environ.get("REGSTAGE_STANDIN_URL", "http://127.0.0.1:28079")
USER_ID = int(os.environ.get("REGSTAGE_CHAT_USER", "100001"))
USER = {"id": USER_ID, "is_bot": False, "first_name": "Demo", "last_name": "User",
        "username": "demo_user", "language_code": os.environ.get("REGSTAGE_CHAT_LANG", "en")}
CHAT = {"id": USER_ID, "type": "private", "first_name": "Demo"}


def http(path, body=None):
    req = urllib.request.Request(API + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"},
                                 method="GET" if body is None else "POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


class Chat:
    def __init__(self):
        self.seen = len(http("/_test/calls"))
        self.buttons = []
        self.message_id = 1
        self.photos = 0

    def send(self, body):
        self.message_id += 1
        m = {"message_id": self.message_id, "from": USER, "chat": CHAT, "date": int(time.time())}
        m.update(body)
        http("/_test/updates", {"message": m})

    def press(self, n):
        if not 1 <= n <= len(self.buttons):
            print("  (no button %d)" % n)
            return
        kind, value = self.buttons[n - 1]
        if kind == "callback":
            http("/_test/updates", {"callback_query": {"id": "cb%d" % time.time_ns(), "from": USER,
                  "chat_instance": "1", "data": value,
                  "message": {"message_id": self.message_id, "chat": CHAT, "date": int(time.time())}}})
        elif kind == "contact":
            self.contact()
        else:
            self.send({"text": value})

    def contact(self):
        self.send({"contact": {"phone_number": "+79160000001", "first_name": "Demo", "user_id": USER_ID}})

    def photo(self, name):
        self.photos += 1
        fid = "sample%s_%d_%d" % (name, USER_ID, self.photos)
        self.send({"photo": [{"file_id": "AgACthumb%d" % self.photos, "file_unique_id": "t", "file_size": 300,
                              "width": 90, "height": 60},
                             {"file_id": fid, "file_unique_id": "f%d" % self.photos, "file_size": 900,
                              "width": 320, "height": 240}]})

    def render(self, call):
        p = call["params"]
        method = call["method"]
        if method == "answerCallbackQuery":
            if p.get("text"):
                print("  bot: (%s)" % p["text"])
            return
        if method == "sendMediaGroup":
            for m in p.get("media", []):
                print("  bot: [%s %s] %s" % (m.get("type"), m.get("media"), m.get("caption", "")))
            return
        if method in ("sendPhoto", "sendDocument"):
            kind = "photo" if method == "sendPhoto" else "document"
            print("  bot: [%s %s] %s" % (kind, p.get(kind), p.get("caption", "")))
            return
        if method not in ("sendMessage", "editMessageText", "editMessageReplyMarkup"):
            print("  bot: (%s)" % method)
            return
        if method == "editMessageText":
            print("  bot (edited): " + p.get("text", ""))
        elif method == "sendMessage":
            print("  bot: " + p.get("text", ""))
        rm = p.get("reply_markup") or {}
        if method.startswith("edit") and not rm:
            self.buttons = []      # an edited message without buttons: they are gone
        if "inline_keyboard" in rm or "keyboard" in rm:
            self.buttons = []
            for row in rm.get("inline_keyboard", []) + rm.get("keyboard", []):
                for b in row:
                    if "callback_data" in b:
                        self.buttons.append(("callback", b["callback_data"]))
                    elif b.get("request_contact"):
                        self.buttons.append(("contact", None))
                    else:
                        self.buttons.append(("text", b["text"]))
                    print("       [%d] %s%s" % (len(self.buttons), b["text"],
                                                 "  (or type /contact)" if b.get("request_contact") else ""))
        elif rm.get("remove_keyboard"):
            self.buttons = []

    def drain(self, wait_s):
        """Print new replies; wait up to wait_s for the first one."""
        t0 = time.time()
        got = False
        while True:
            calls = http("/_test/calls")
            new = calls[self.seen:]
            self.seen = len(calls)
            for c in new:
                if str(c["params"].get("chat_id", USER_ID)) == str(USER_ID) or c["method"] == "answerCallbackQuery":
                    self.render(c)
                    got = got or c["method"] != "answerCallbackQuery" or bool(c["params"].get("text"))
            if got:
                time.sleep(0.3)
                calls = http("/_test/calls")
                for c in calls[self.seen:]:
                    self.render(c)
                self.seen = len(calls)
                return
            if time.time() - t0 > wait_s:
                return
            time.sleep(0.1)


def decide(line, buttons):
    """What a typed line does, given how many buttons the last keyboard has:
    ("press", n) only for n in 1..buttons written in ASCII digits (89161234567
    with a three-button keyboard is a phone number, sent as text; so is "²",
    which str.isdigit() calls a digit), ("contact", None), ("photo", name),
    ("quit", None), else ("text", line)."""
    if re.fullmatch(r"[1-9][0-9]{0,5}", line) and int(line) <= buttons:
        return "press", int(line)
    if line == "/quit":
        return "quit", None
    if line == "/contact":
        return "contact", None
    if line == "/photo" or line.startswith("/photo "):
        return "photo", (line.split() + ["passport"])[1]
    return "text", line


def main():
    interactive = sys.stdin.isatty()
    print(__doc__.split("\n\n", 1)[1])
    chat = Chat()
    print("  (you are Telegram user %d; type /start to begin)" % USER_ID)
    while True:
        if interactive:
            try:
                line = input("you> ")
            except EOFError:
                break
        else:
            line = sys.stdin.readline()
            if not line:
                break
            line = line.rstrip("\n")
            print("you> " + line)
        line = line.strip()
        if not line:
            chat.drain(0.5)
            continue
        action, arg = decide(line, len(chat.buttons))
        if action == "quit":
            break
        if action == "press":
            chat.press(arg)
        elif action == "contact":
            chat.contact()
        elif action == "photo":
            if arg not in ("passport", "selfie"):
                print("  (samples: passport, selfie)")
                continue
            chat.photo(arg)
        else:
            chat.send({"text": arg})
        chat.drain(15)
    print("bye — the bot keeps running; stop everything with: bash scripts/down.sh")


if __name__ == "__main__":
    main()
