#!/usr/bin/env python3
"""The review suite: the admin review in Telegram, end to end.

Every case goes through regstage-relay and the Bot API stand-in: users and
admins are Telegram-shaped updates queued at the stand-in and fetched by the
relay's getUpdates; what the bot does is what the stand-in recorded
(sendMessage, sendMediaGroup, editMessageText, answerCallbackQuery ...), and
each case also checks the rows (users, documents, review_log) and the files
under upload_dir.  Prints a table of cases and exits non-zero if any failed.

Admins: Olga (90001) and Mark (90002), both English; the reviews go to the
admin group regstage.admin_chat_id.  Users register in Russian or English.
"""
import hashlib
import importlib.util
import itertools
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
from regstage_testlib import Env, Relay, Report, check, wait_for  # noqa: E402


def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SRC = os.environ["REVIEW_SUITE_SRC"]
standin = load("botapi_standin", os.path.join(SRC, "test", "standin", "botapi_standin.py"))
env = Env("REVIEW_SUITE")
report = Report()
case = report.case
ADMIN_CHAT = int(os.environ["REVIEW_SUITE_ADMIN_CHAT"])
OLGA, MARK = 90001, 90002
UPLOADS = os.path.join(env.dir, "uploads")
GROUP = {"id": ADMIN_CHAT, "type": "supergroup", "title": "Reviewers"}
ids = itertools.count(5000)

env.sql("CREATE EXTENSION IF NOT EXISTS pg_regstage")
env.sql("DO $$ BEGIN CREATE ROLE review_bot LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
env.sql("SELECT regstage.grant_bot_access('review_bot')")
env.sql("INSERT INTO regstage.admins (telegram_id, name, language) VALUES (%d, 'Olga', 'en'), (%d, 'Mark', 'en') "
        "ON CONFLICT DO NOTHING" % (OLGA, MARK))
env.sql("CREATE SCHEMA IF NOT EXISTS review_test")
env.http("/_test/reset", {})
relay = Relay(env, db_user="review_bot")


# ---- Telegram-shaped updates ------------------------------------------------
def sender(tid, lang="en"):
    return {"id": tid, "is_bot": False, "first_name": "Test", "username": "t%d" % tid, "language_code": lang}


def message(tid, body, chat=None, lang="en"):
    m = {"message_id": next(ids), "from": sender(tid, lang), "date": int(time.time()),
         "chat": chat or {"id": tid, "type": "private", "first_name": "Test"}}
    m.update(body)
    return {"message": m}


def text(tid, t, lang="en"):
    return message(tid, {"text": t}, lang=lang)


def group_text(tid, t, reply_to=None):
    """A message an admin writes in the admin group (a reply to reply_to)."""
    body = {"text": t}
    if reply_to is not None:
        body["reply_to_message"] = {"message_id": reply_to, "chat": GROUP, "date": 1, "text": "?"}
    return message(tid, body, chat=GROUP)


def photo(tid, file_id):
    return message(tid, {"photo": [
        {"file_id": "AgACthumb%d" % tid, "file_unique_id": "a", "file_size": 100, "width": 90, "height": 90},
        {"file_id": file_id, "file_unique_id": "b", "file_size": 9999, "width": 1280, "height": 960}]})


def contact(tid):
    return message(tid, {"contact": {"phone_number": "+7916%07d" % (tid % 10000000), "first_name": "Test",
                                     "user_id": tid}})


def callback(tid, data, chat_id=None, message_id=1, lang="en"):
    """A button press: (the update, its callback_query id).  chat_id: the
    chat of the message the button is on (default the presser's own)."""
    cid = "cbq%d" % next(ids)
    chat = GROUP if chat_id == ADMIN_CHAT else {"id": chat_id or tid, "type": "private"}
    return {"callback_query": {"id": cid, "from": sender(tid, lang), "chat_instance": "1", "data": data,
                               "message": {"message_id": message_id, "chat": chat, "date": 1}}}, cid


def press(tid, data, chat_id=None, message_id=1):
    u, cid = callback(tid, data, chat_id, message_id)
    env.inject([u])
    return cid


# ---- what the stand-in received ------------------------------------------------
def calls(chat=None, method=None):
    return env.calls(chat, method)


def texts(chat):
    return [c["params"].get("text", "") for c in calls(chat, "sendMessage")]


def answer(cid, timeout=15):
    """The answerCallbackQuery of callback query cid."""
    return wait_for(lambda: next((c for c in calls(method="answerCallbackQuery")
                                  if c["params"].get("callback_query_id") == cid), None),
                    timeout, "the answer to callback query %s" % cid)


def reviews(uid, chat=ADMIN_CHAT):
    """The review messages (summary and buttons) of users.id uid sent to chat."""
    return [c for c in calls(chat, "sendMessage") if c["params"].get("text", "").startswith("New registration #%d\n" % uid)]


def wait_review(uid, n=1, chat=ADMIN_CHAT):
    wait_for(lambda: len(reviews(uid, chat)) >= n, 15, "review %d of user id %d in chat %d" % (n, uid, chat))
    return reviews(uid, chat)[n - 1]


def edits(chat, message_id, method="editMessageText"):
    return [c for c in calls(chat, method) if c["params"].get("message_id") == message_id]


def buttons(call):
    return [[b["callback_data"] for b in row] for row in call["params"].get("reply_markup", {}).get("inline_keyboard", [])]


def wait_text(chat, pred, what, timeout=15):
    return wait_for(lambda: next((t for t in texts(chat) if pred(t)), None), timeout, what)


def quiet(seconds=1.0):
    """Let the relay send anything still queued (for 'exactly once' counts)."""
    wait_for(lambda: env.sql("SELECT count(*) FROM regstage.outbox WHERE status = 'pending'") == "0", 15,
             "the outbox drained")
    time.sleep(seconds)


# ---- the database and the files -------------------------------------------------
def user_id(tid):
    return int(env.sql("SELECT id FROM regstage.users WHERE telegram_id = %d" % tid))


def row(q):
    return env.sql(q).split("|")


def documents(uid):
    """{doc_type: (telegram_file_id, file_path, sha256)} of users.id uid."""
    out = {}
    for line in env.sql("SELECT doc_type, telegram_file_id, file_path, sha256 FROM regstage.documents "
                        "WHERE user_id = %d ORDER BY id" % uid).splitlines():
        t, fid, path, sha = line.split("|")
        out[t] = (fid, path, sha)
    return out


def on_disk(rel):
    return os.path.isfile(os.path.join(UPLOADS, rel))


def pg_log():
    with open(env.pg_log, errors="replace") as f:
        return f.read()


def register(tid, lang, name, passport=None, selfie=None):
    """A whole registration through the relay; returns (users.id, the review
    message the admin group got)."""
    passport = passport or "AgACpass%d" % tid
    selfie = selfie or "AgACself%d" % tid
    env.inject([text(tid, "/start", lang), callback(tid, "lang:" + lang)[0], text(tid, name, lang), contact(tid),
                photo(tid, passport), photo(tid, selfie)])
    uid = int(wait_for(lambda: env.sql(
        "SELECT u.id FROM regstage.users u WHERE u.telegram_id = %d "
        "AND (SELECT count(*) FROM regstage.documents d WHERE d.user_id = u.id) = 2" % tid), 20,
        "user %d registered" % tid))
    return uid, wait_review(uid)


# ---- the cases ---------------------------------------------------------------
U1 = 510001


@case("register -> review -> approve", "a registration (ru) through the relay: the admin group gets a media group "
      "of exactly the two file_ids (no upload), then the summary in the admins' language (en: name, phone, username, "
      "language, started, finished) with Approve / Reject / Ask buttons; Mark presses Approve: the user hears it in "
      "Russian once, users.reviewed_by/at set, one audit row, the review message edited to 'Approved by Mark' "
      "without buttons, the press answered")
def _():
    uid, rv = register(U1, "ru", "Иван Петров")
    docs = documents(uid)
    check(list(docs) == ["passport", "selfie"], "documents %s" % docs)
    # the documents, by file_id, before the summary
    mg = [c for c in calls(ADMIN_CHAT, "sendMediaGroup") if any(m.get("media") == docs["passport"][0]
                                                                for m in c["params"].get("media", []))]
    check(len(mg) == 1, "one media group with the passport, got %d" % len(mg))
    media = mg[0]["params"]["media"]
    check([m["media"] for m in media] == [docs["passport"][0], docs["selfie"][0]],
          "media are the two file_ids in order: %s" % media)
    check(all(m["type"] == "photo" for m in media), "sent as photos by file_id: %s" % media)
    check(not [c for c in calls(ADMIN_CHAT) if c["method"] in ("sendPhoto", "sendDocument")],
          "no document sent (or uploaded) on its own")
    order = [c["method"] for c in calls(ADMIN_CHAT)]
    check(order == ["sendMediaGroup", "sendMessage"], "the admin group got %s" % order)
    # the summary, in English (the admins' language) though the user chose Russian
    t = rv["params"]["text"]
    for line in ("Name: Иван Петров", "Phone: +7916%07d" % (U1 % 10000000), "Username: @t%d" % U1, "Language: ru",
                 "Documents: passport or driving licence, selfie"):
        check(line in t.split("\n"), "summary line %r in %r" % (line, t))
    check(re.search(r"^Started: \d{4}-\d\d-\d\d \d\d:\d\d$", t, re.M) and
          re.search(r"^Finished: \d{4}-\d\d-\d\d \d\d:\d\d$", t, re.M), "started and finished in %r" % t)
    check(buttons(rv) == [["rv:a:%d" % uid, "rv:r:%d" % uid], ["rv:d:%d" % uid]], "buttons %s" % buttons(rv))
    labels = [b["text"] for r in rv["params"]["reply_markup"]["inline_keyboard"] for b in r]
    check(labels == ["✅ Approve", "❌ Reject", "📄 Ask for new documents"], "labels %s" % labels)
    check(any(x.startswith("Регистрация завершена") for x in texts(U1)), "the user's own answer in Russian")

    cid = press(MARK, "rv:a:%d" % uid, ADMIN_CHAT, rv["message_id"])
    notice = wait_text(U1, lambda x: x.startswith("Ваша регистрация одобрена"), "the approval in Russian")
    check(notice == "Ваша регистрация одобрена. Добро пожаловать!", notice)
    check(answer(cid)["params"].get("text") == "Done.", "the press answered 'Done.'")
    ed = wait_for(lambda: edits(ADMIN_CHAT, rv["message_id"]), 10, "the review message edited")
    check(len(ed) == 1, "edited once: %s" % ed)
    check(re.search(r"^✅ Approved by Mark, \d{4}-", ed[0]["params"]["text"], re.M), ed[0]["params"]["text"])
    check(ed[0]["params"]["text"].startswith("New registration #%d\n" % uid), "the edit keeps the summary")
    check("reply_markup" not in ed[0]["params"], "the buttons are gone: %s" % ed[0]["params"])
    check(row("SELECT status, reviewed_by, reviewed_at > now() - interval '1 minute', reject_reason IS NULL "
              "FROM regstage.users WHERE id = %d" % uid) == ["APPROVED", str(MARK), "t", "t"], "users row")
    check(env.sql("SELECT admin_id || ':' || action FROM regstage.review_log WHERE user_id = %d "
                  "AND action NOT IN ('refused') ORDER BY id" % uid) == "%d:approved" % MARK, "one audit row")
    quiet()
    check(sum(x.startswith("Ваша регистрация") for x in texts(U1)) == 1, "notified once: %s" % texts(U1))


U2 = 510002


@case("reject with a typed reason", "Olga: Reject -> reasons -> Other -> a force-reply question in the group that "
      "@mentions her (selective); "
      "a group message that is no reply is ignored, the reply is the reason: the user hears it and that they may "
      "register again, the review shows it; /start then starts over and a new registration replaces the row")
def _():
    uid, rv = register(U2, "en", "John Smith")
    mid = rv["message_id"]
    c1 = press(OLGA, "rv:r:%d" % uid, ADMIN_CHAT, mid)
    check(answer(c1)["params"].get("text") == "Choose a reason.", "asked for a reason")
    kb = wait_for(lambda: edits(ADMIN_CHAT, mid, "editMessageReplyMarkup"), 10, "the reasons keyboard")
    check(["rv:rr:%d:0:other" % uid] in buttons(kb[-1]), "an 'other' button: %s" % buttons(kb[-1]))
    press(OLGA, "rv:rr:%d:0:other" % uid, ADMIN_CHAT, mid)
    q = wait_for(lambda: next((c for c in calls(ADMIN_CHAT, "sendMessage")
                               if "Type the reason for John Smith (#%d)" % uid in c["params"]["text"]), None),
                 10, "the question for the reason")
    # a selective force_reply opens the reply field for the users the text @mentions: Olga
    check(q["params"]["text"].startswith("@t%d Type the reason" % OLGA), "Olga is mentioned: %r" % q["params"]["text"])
    check(q["params"].get("reply_markup") == {"force_reply": True, "selective": True},
          "asked with a selective force_reply: %s" % q["params"].get("reply_markup"))
    env.inject([group_text(OLGA, "brb, coffee"), group_text(OLGA, "The selfie is blurred", reply_to=q["message_id"])])
    notice = wait_text(U2, lambda x: x.startswith("Your registration was rejected"), "the rejection")
    check(notice == "Your registration was rejected. Reason: The selfie is blurred\n"
                    "You may register again: send /start.", repr(notice))
    ed = wait_for(lambda: edits(ADMIN_CHAT, mid), 10, "the review message edited")
    check(re.search(r"^❌ Rejected by Olga, .*Reason: The selfie is blurred$", ed[-1]["params"]["text"], re.M),
          ed[-1]["params"]["text"])
    check(row("SELECT status, reviewed_by, reject_reason FROM regstage.users WHERE id = %d" % uid)
          == ["REJECTED", str(OLGA), "The selfie is blurred"], "users row")
    check(env.sql("SELECT admin_id || ':' || action || ':' || detail FROM regstage.review_log WHERE user_id = %d "
                  "ORDER BY id" % uid) == "%d:rejected:The selfie is blurred" % OLGA, "one audit row")
    wait_for(lambda: "Done." in texts(ADMIN_CHAT), 10, "'Done.' in the group")
    check(env.sql("SELECT count(*) FROM regstage.admin_input") == "0", "no reason left pending")
    # /start starts over: the language question; a whole new registration replaces the REJECTED row
    n0 = len(texts(U2))
    env.inject([text(U2, "/start")])
    wait_for(lambda: len(texts(U2)) > n0, 10, "the answer to /start")
    check(texts(U2)[n0].startswith("Welcome! Please choose your language."), "starts over: %r" % texts(U2)[n0])
    uid2, _ = register(U2, "en", "John Smith", "AgACpass2%d" % U2, "AgACself2%d" % U2)
    check(uid2 != uid, "a new row")
    check(row("SELECT count(*), min(status), count(reviewed_by), count(reject_reason) FROM regstage.users "
              "WHERE telegram_id = %d" % U2) == ["1", "PENDING", "0", "0"], "one PENDING row, no review")


U3 = 510003


@case("ask for a new selfie", "Mark: Ask -> tick selfie -> reason 'unreadable': the user is told which and why and "
      "asked for exactly the selfie; the new photo's download (slow) runs while the old row and file stay; after "
      "the commit the old file is gone, the row references a file with the new content, the passport is untouched, "
      "the admins get the review again with the new file_id")
def _():
    uid, rv = register(U3, "en", "Anna Lee")
    mid = rv["message_id"]
    old = documents(uid)
    check(on_disk(old["selfie"][1]) and on_disk(old["passport"][1]), "the old files on disk")
    press(MARK, "rv:d:%d" % uid, ADMIN_CHAT, mid)
    wait_for(lambda: edits(ADMIN_CHAT, mid, "editMessageReplyMarkup"), 10, "the documents keyboard")
    check(buttons(edits(ADMIN_CHAT, mid, "editMessageReplyMarkup")[-1])[:2]
          == [["rv:dt:%d:1" % uid], ["rv:dt:%d:2" % uid]], "a checkbox per document")
    press(MARK, "rv:dt:%d:2" % uid, ADMIN_CHAT, mid)
    press(MARK, "rv:ds:%d:2" % uid, ADMIN_CHAT, mid)
    wait_for(lambda: len(edits(ADMIN_CHAT, mid, "editMessageReplyMarkup")) >= 3, 10, "the reasons keyboard")
    n0 = len(texts(U3))
    press(MARK, "rv:dr:%d:2:unreadable" % uid, ADMIN_CHAT, mid)
    wait_for(lambda: len(texts(U3)) >= n0 + 2, 10, "the request and the question")
    check(texts(U3)[n0:] == ["Please send new documents: selfie. Reason: the photo is unreadable",
                             "Now please send a selfie."], "asked for exactly the selfie: %s" % texts(U3)[n0:])
    ed = wait_for(lambda: edits(ADMIN_CHAT, mid), 10, "the review message edited")
    check("📄 New documents asked for by Mark" in ed[-1]["params"]["text"], ed[-1]["params"]["text"])
    check(buttons(ed[-1])[0] == ["rv:a:%d" % uid, "rv:r:%d" % uid], "the review stays open")
    check(row("SELECT array_to_string(doc_types, ','), reason, requested_by FROM regstage.document_requests "
              "WHERE user_id = %d" % uid) == ["selfie", "the photo is unreadable", str(MARK)], "the request row")
    # the new selfie downloads slowly: until its transaction commits, the old row and file stay
    new_fid = "dldelay2500_AgACnewself%d" % U3
    env.inject([photo(U3, new_fid)])
    d = os.path.join(UPLOADS, str(U3))
    wait_for(lambda: any(f.endswith(".part") for f in os.listdir(d)), 10, "the new selfie downloading")
    check(on_disk(old["selfie"][1]), "the old selfie is kept while the new one downloads")
    check(documents(uid)["selfie"] == old["selfie"], "the old row is kept while the new one downloads")
    wait_text(U3, lambda x: x.startswith("Thank you, the documents were received"), "the documents received")
    new = documents(uid)
    check(new["passport"] == old["passport"] and on_disk(old["passport"][1]), "the passport untouched")
    check(new["selfie"][0] == new_fid and new["selfie"][1] != old["selfie"][1], "the row has the new file: %s" % new)
    check(not on_disk(old["selfie"][1]), "the old selfie file is gone after the commit")
    check(on_disk(new["selfie"][1]), "the new selfie file exists")
    with open(os.path.join(UPLOADS, new["selfie"][1]), "rb") as f:
        content = f.read()
    check(content == standin.content_for_id(new_fid), "the new file holds the new content")
    check(hashlib.sha256(content).hexdigest() == new["selfie"][2], "documents.sha256 is the new file's")
    check(not any(f.endswith(".part") for f in os.listdir(d)), "no partial file left")
    rv2 = wait_review(uid, 2)
    check(buttons(rv2)[0] == ["rv:a:%d" % uid, "rv:r:%d" % uid], "the review again, with buttons")
    mg = [c for c in calls(ADMIN_CHAT, "sendMediaGroup")
          if [m["media"] for m in c["params"]["media"]] == [old["passport"][0], new_fid]]
    check(len(mg) == 1, "a media group of the passport and the new selfie")
    check(env.sql("SELECT string_agg(action, ',' ORDER BY id) FROM regstage.review_log WHERE user_id = %d" % uid)
          == "documents_requested,documents_received", "audit rows")
    check(row("SELECT status FROM regstage.users WHERE id = %d" % uid) == ["PENDING"], "still PENDING")


def lock_waiters():
    return int(env.sql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'review_bot' "
                       "AND wait_event_type = 'Lock'"))


@case("two admins at once", "two pairs of presses, each pair in one getUpdates batch (Approve+Approve, "
      "Reject+Approve), decisions slowed by a test trigger so the second processor is seen waiting on the row "
      "lock: per user exactly one decision, one notification, one audit row; the loser hears 'Already <decision> "
      "by <winner>.'")
def _():
    a, rva = register(510041, "en", "Pair One")
    b, rvb = register(510042, "en", "Pair Two")
    env.sql("CREATE OR REPLACE FUNCTION review_test.slow_decision() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(1.5); RETURN NEW; END $$")
    env.sql("CREATE TRIGGER zz_slow_decision BEFORE UPDATE OF status ON regstage.users FOR EACH ROW "
            "WHEN (OLD.telegram_id IN (510041, 510042)) EXECUTE FUNCTION review_test.slow_decision()")
    try:
        ma, cma = callback(MARK, "rv:a:%d" % a, ADMIN_CHAT, rva["message_id"])
        oa, coa = callback(OLGA, "rv:a:%d" % a, ADMIN_CHAT, rva["message_id"])
        ob, cob = callback(OLGA, "rv:rr:%d:0:duplicate" % b, ADMIN_CHAT, rvb["message_id"])
        mb, cmb = callback(MARK, "rv:a:%d" % b, ADMIN_CHAT, rvb["message_id"])
        env.inject([ma, oa, ob, mb])
        waited = [0]

        def all_answered():
            waited[0] = max(waited[0], lock_waiters())
            got = [c["params"].get("callback_query_id") for c in calls(method="answerCallbackQuery")]
            return all(x in got for x in (cma, coa, cob, cmb))
        wait_for(all_answered, 20, "the four presses answered")
        check(waited[0] >= 1, "no processor was seen waiting on a lock: the presses did not race")
    finally:
        env.sql("DROP TRIGGER IF EXISTS zz_slow_decision ON regstage.users")
    quiet()
    for uid, tid, pair in ((a, 510041, (cma, coa)), (b, 510042, (cob, cmb))):
        st, by = row("SELECT status, reviewed_by FROM regstage.users WHERE id = %d" % uid)
        name = {str(MARK): "Mark", str(OLGA): "Olga"}[by]
        decisions = env.sql("SELECT count(*) FROM regstage.review_log WHERE user_id = %d "
                            "AND action IN ('approved', 'rejected')" % uid)
        check(decisions == "1", "user id %d: %s decisions" % (uid, decisions))
        notes = [x for x in texts(tid) if x.startswith("Your registration")]
        check(len(notes) == 1, "user %d notified %d times: %s" % (tid, len(notes), notes))
        answers = sorted(answer(c)["params"].get("text") for c in pair)
        word = {"APPROVED": "approved", "REJECTED": "rejected"}[st]
        check(answers == sorted(["Done.", "Already %s by %s." % (word, name)]),
              "user id %d (%s by %s): answers %s" % (uid, st, name, answers))
    check(row("SELECT status FROM regstage.users WHERE id = %d" % a) == ["APPROVED"], "pair one approved")


U5 = 510005


@case("forged button from a non-admin", "a stranger presses Approve (the group's message), the user presses Approve "
      "on their own registration, a stranger pages the queue: each answered 'only admins', nothing changes "
      "(status, reviewed_by, no decision, no notification, no edit), refusals in review_log and the server log")
def _():
    uid, rv = register(U5, "en", "Mallory Doe")
    n_user = len(texts(U5))
    c1 = press(777005, "rv:a:%d" % uid, ADMIN_CHAT, rv["message_id"])
    c2 = press(U5, "rv:a:%d" % uid)
    c3 = press(777005, "adm:p:0")
    for c in (c1, c2, c3):
        a = answer(c)["params"]
        check(a.get("text") == "Only admins can use these buttons." and a.get("show_alert") is True, "refused: %s" % a)
    quiet()
    check(row("SELECT status, reviewed_by IS NULL, reviewed_at IS NULL FROM regstage.users WHERE id = %d" % uid)
          == ["PENDING", "t", "t"], "the user is unchanged")
    check(env.sql("SELECT count(*) FROM regstage.review_log WHERE user_id = %d AND action <> 'refused'" % uid) == "0",
          "no decision recorded")
    check(len(texts(U5)) == n_user, "the user heard nothing: %s" % texts(U5)[n_user:])
    check(not edits(ADMIN_CHAT, rv["message_id"]) and not edits(ADMIN_CHAT, rv["message_id"], "editMessageReplyMarkup"),
          "the review message is untouched")
    check(not calls(777005, "sendMessage") and not calls(777005, "editMessageText"), "the stranger got no queue")
    # sorted: the three come from two chats, which processors apply in parallel
    refused = sorted(env.sql("SELECT admin_id || ':' || coalesce(user_id::text, '-') || ':' || detail FROM regstage.review_log "
                             "WHERE action = 'refused' AND admin_id IN (777005, %d)" % U5).splitlines())
    check(refused == sorted(["777005:%d:rv:a:%d" % (uid, uid), "%d:%d:rv:a:%d" % (U5, uid, uid), "777005:-:adm:p:0"]),
          "refusals logged: %s" % refused)
    log = pg_log()
    for who, data in ((777005, "rv:a:%d" % uid), (U5, "rv:a:%d" % uid), (777005, "adm:p:0")):
        check('review button "%s" pressed by telegram_id %d, who is not in regstage.admins: refused' % (data, who)
              in log, "the server log has the refusal of %s by %d" % (data, who))


@case("status change from psql", "an UPDATE ... SET status = 'APPROVED' rolled back notifies no one; the same UPDATE "
      "committed notifies the user once (in their language), audited with admin_id NULL; an UPDATE to the same "
      "status notifies no one")
def _():
    uid = user_id(U5)
    n0 = len(texts(U5))
    s = env.session()
    try:
        s.run("BEGIN")
        s.run("UPDATE regstage.users SET status = 'APPROVED' WHERE id = %d" % uid)
        check(s.run("SELECT count(*) FROM regstage.outbox WHERE chat_id = %d AND status = 'pending'" % U5) == ["1"],
              "queued inside the transaction")
        time.sleep(1.0)         # a notification sent before the commit would arrive now
        check(len(texts(U5)) == n0, "nothing sent before the commit")
        s.run("ROLLBACK")
    finally:
        s.close()
    env.sql("UPDATE regstage.users SET status = 'APPROVED' WHERE id = %d" % uid)
    wait_for(lambda: len(texts(U5)) > n0, 10, "the notification")
    env.sql("UPDATE regstage.users SET status = 'APPROVED' WHERE id = %d" % uid)
    quiet()
    check(texts(U5)[n0:] == ["Your registration is approved. Welcome!"], "notified once: %s" % texts(U5)[n0:])
    check(env.sql("SELECT coalesce(admin_id::text, 'SQL') || ':' || action FROM regstage.review_log "
                  "WHERE user_id = %d AND action <> 'refused' ORDER BY id" % uid) == "SQL:approved", "one audit row")
    check(row("SELECT status, reviewed_by IS NULL, reviewed_at IS NOT NULL FROM regstage.users WHERE id = %d" % uid)
          == ["APPROVED", "t", "t"], "reviewed from SQL, stamped")


@case("/admin queue and /status", "with more PENDING users than a page (5) holds: /admin shows the count, the "
      "oldest and a button per user in age order, Next edits the message to page 2 (Previous back); a user's button "
      "sends that review; /status answers users in their language; a stranger's /admin shows no queue")
def _():
    env.sql("INSERT INTO regstage.users (telegram_id, full_name, phone, language, created_at) "
            "SELECT 519000 + i, 'Waiting User ' || chr(64 + i), '+1555000' || lpad(i::text, 4, '0'), 'en', "
            "now() - (10 - i) * interval '1 hour' FROM generate_series(1, 7) i")
    try:
        pending = env.sql("SELECT id FROM regstage.users WHERE status = 'PENDING' ORDER BY created_at, id").split()
        n = len(pending)
        check(n > 5, "more than a page pending: %d" % n)
        oldest = env.sql("SELECT regstage.review_time(min(created_at)) FROM regstage.users WHERE status = 'PENDING'")
        pages = (n + 4) // 5
        env.inject([text(MARK, "/admin")])
        q = wait_for(lambda: next((c for c in calls(MARK, "sendMessage")
                                   if c["params"]["text"].startswith("Waiting for review")), None), 10, "the queue")
        check(q["params"]["text"] == "Waiting for review: %d, the oldest since %s. Page 1 of %d." % (n, oldest, pages),
              q["params"]["text"])
        check(buttons(q) == [["adm:u:%s" % i] for i in pending[:5]] + [["adm:p:1"]], "page 1: %s" % buttons(q))
        press(MARK, "adm:p:1", MARK, q["message_id"])
        p2 = wait_for(lambda: edits(MARK, q["message_id"]), 10, "page 2")[-1]
        check(p2["params"]["text"].endswith("Page 2 of %d." % pages), p2["params"]["text"])
        nav = [["adm:p:0"]] + ([["adm:p:2"]] if pages > 2 else [])
        check(buttons(p2) == [["adm:u:%s" % i] for i in pending[5:10]] + [sum(nav, [])], "page 2: %s" % buttons(p2))
        u3 = user_id(U3)
        n0 = len(reviews(u3, MARK))
        press(MARK, "adm:u:%d" % u3, MARK, p2["message_id"])
        rv = wait_review(u3, n0 + 1, MARK)
        check(buttons(rv)[0] == ["rv:a:%d" % u3, "rv:r:%d" % u3], "the review with its buttons in Mark's chat")
        check(any(c["params"]["media"][0]["media"] == documents(u3)["passport"][0]
                  for c in calls(MARK, "sendMediaGroup")), "with its documents")
        # /status
        env.inject([text(U1, "/status", "ru"), text(U3, "/status"), text(777006, "/status"), text(777007, "/admin")])
        wait_text(U1, lambda x: x == "Вы зарегистрированы, заявка одобрена.", "U1's status in Russian")
        wait_text(U3, lambda x: x == "Thank you, the documents were received and are waiting for review.",
                  "U3's status")
        wait_text(777006, lambda x: x == "You are not registered. Send /start to register.", "a stranger's status")
        wait_for(lambda: texts(777007), 10, "the answer to a stranger's /admin")
        check(not any(x.startswith("Waiting for review") for x in texts(777007)), "no queue for a stranger")
    finally:
        env.sql("DELETE FROM regstage.users WHERE telegram_id BETWEEN 519001 AND 519007")


@case("retention and deleted rows", "a user rejected 31 days ago (rejected_retention 30d): the background worker "
      "(cleanup_interval 1s) deletes the documents and their files, audits and logs it without name or phone; a user "
      "rejected now keeps them; a documents row deleted by hand keeps its file until the commit (and after a "
      "rollback), loses it at the commit; deleting a user takes its files at the commit")
def _():
    old, _ = register(510008, "en", "Old Rejected")
    new, _ = register(510009, "en", "New Rejected")
    env.sql("UPDATE regstage.users SET status = 'REJECTED', reject_reason = 'test' WHERE id IN (%d, %d)" % (old, new))
    env.sql("UPDATE regstage.users SET reviewed_at = now() - interval '31 days' WHERE id = %d" % old)
    old_docs, new_docs = documents(old), documents(new)
    check(all(on_disk(p) for _, p, _ in list(old_docs.values()) + list(new_docs.values())), "files on disk")
    env.sql("ALTER SYSTEM SET regstage.cleanup_interval = '1s'")
    env.sql("SELECT pg_reload_conf()")
    try:
        wait_for(lambda: env.sql("SELECT count(*) FROM regstage.documents WHERE user_id = %d" % old) == "0", 20,
                 "the worker purged the old rejected user's documents")
    finally:
        env.sql("ALTER SYSTEM RESET regstage.cleanup_interval")
        env.sql("SELECT pg_reload_conf()")
    check(not any(on_disk(p) for _, p, _ in old_docs.values()), "their files are gone")
    check(len(documents(new)) == 2 and all(on_disk(p) for _, p, _ in new_docs.values()),
          "the user rejected now keeps documents and files")
    check(env.sql("SELECT detail FROM regstage.review_log WHERE user_id = %d AND action = 'documents_purged'" % old)
          == "passport,selfie", "audited")
    lines = [l for l in pg_log().splitlines() if "purge_rejected: user id %d:" % old in l]
    check(len(lines) == 1 and "2 documents deleted (passport,selfie)" in lines[0], "logged: %s" % lines)
    check("Old Rejected" not in lines[0] and "+7916" not in lines[0], "no name or phone logged: %s" % lines[0])

    # a documents row deleted by hand: its file goes at the commit, not before, not after a rollback
    u1 = user_id(U1)
    docs = documents(u1)
    pid = env.sql("SELECT id FROM regstage.documents WHERE user_id = %d AND doc_type = 'passport'" % u1)
    s = env.session()
    try:
        s.run("BEGIN")
        s.run("DELETE FROM regstage.documents WHERE id = %s" % pid)
        check(on_disk(docs["passport"][1]), "the file stays until the commit")
        s.run("ROLLBACK")
        check(on_disk(docs["passport"][1]) and "passport" in documents(u1), "a rolled-back delete keeps row and file")
        s.run("BEGIN")
        s.run("DELETE FROM regstage.documents WHERE id = %s" % pid)
        check(on_disk(docs["passport"][1]), "the file stays until the commit")
        s.run("COMMIT")
    finally:
        s.close()
    check(not on_disk(docs["passport"][1]), "the file is gone at the commit")
    check(on_disk(docs["selfie"][1]), "the other document's file stays")
    env.sql("DELETE FROM regstage.users WHERE id = %d" % u1)
    check(not on_disk(docs["selfie"][1]), "deleting the user took its last file at the commit")


@case("terminal chat: number or text", "scripts/chat.py decide(): a number is a button press only when the last "
      "keyboard has that many buttons (ASCII digits, no leading zero); otherwise it is text (a phone typed as "
      "89161234567, 4 of 3, 0, 03, '²'); /contact, /photo NAME, /quit")
def _():
    chat = load("regstage_chat", os.path.join(SRC, "scripts", "chat.py"))
    cases = [("2", 3, ("press", 2)), ("3", 3, ("press", 3)), ("1", 1, ("press", 1)),
             ("89161234567", 3, ("text", "89161234567")), ("4", 3, ("text", "4")), ("1", 0, ("text", "1")),
             ("0", 3, ("text", "0")), ("03", 5, ("text", "03")), ("²", 3, ("text", "²")),
             ("١", 3, ("text", "١")), ("9" * 5000, 3, ("text", "9" * 5000)), ("+79161234567", 3, ("text", "+79161234567")),
             ("/contact", 2, ("contact", None)), ("/photo selfie", 2, ("photo", "selfie")),
             ("/photo", 0, ("photo", "passport")), ("/quit", 2, ("quit", None)), ("/start", 2, ("text", "/start"))]
    bad = [(line[:15], n, chat.decide(line, n), want) for line, n, want in cases if chat.decide(line, n) != want]
    check(not bad, "decide(line, buttons) -> got, wanted: %s" % bad)


relay.stop()
sys.exit(report.finish())
