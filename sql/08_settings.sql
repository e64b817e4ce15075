-- Settings the check hooks refuse, and the secret settings' contexts.

-- A document type listed twice: a registration keeps one document per type
-- (UNIQUE(user_id, doc_type)), so every commit would fail.
SET regstage.required_documents = 'passport,passport';
SET regstage.required_documents = 'passport, selfie, passport';
SET regstage.required_documents = 'passport,selfie,driving_licence';
SHOW regstage.required_documents;
RESET regstage.required_documents;

-- regstage.http_proxy: empty (no proxy) or a proxy URL
SHOW regstage.http_proxy;
SET regstage.http_proxy = 'proxy.example.org:3128';
SET regstage.http_proxy = 'http://';
SET regstage.http_proxy = 'http://proxy.example.org:3128';
SHOW regstage.http_proxy;
RESET regstage.http_proxy;

-- The secret files are set in postgresql.conf (or ALTER SYSTEM) only, as absolute paths
SET regstage.bot_token_file = '/etc/regstage/bot_token';
SET regstage.redis_password_file = '/etc/regstage/redis_password';
ALTER SYSTEM SET regstage.bot_token_file = 'relative/bot_token';
SELECT name, setting, context FROM pg_settings
 WHERE name IN ('regstage.bot_token_file', 'regstage.redis_password_file', 'regstage.http_proxy')
 ORDER BY name;
