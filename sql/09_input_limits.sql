-- Input limits: a phone number has at most 15 digits (E.164) after its
-- international prefix; longer ones are refused whole, never cut.

-- "00" + 15 digits is a 15-digit international number: kept whole
SELECT regstage.normalize_phone('00123456789012345');
SELECT regstage.normalize_phone('+123 456 789 012 345');
SELECT regstage.stage_user_data(9009, '{"phone": "00 1234 5678 9012 345"}');
SELECT regstage.staged(9009)->'data'->>'phone' AS staged_phone;
SELECT regstage.clear_registration(9009);

-- 16 digits or more: refused with 22023, and nothing staged
SELECT regstage.normalize_phone('+1234567890123456') IS NULL AS refused;
SELECT regstage.normalize_phone('001234567890123456') IS NULL AS refused;
SELECT regstage_test.try($$SELECT regstage.stage_user_data(9009, '{"phone": "+1234567890123456"}')$$);
SELECT regstage_test.try($$SELECT regstage.stage_user_data(9009, '{"phone": "001234567890123456"}')$$);
SELECT regstage_test.try($$SELECT regstage.stage_user_data(9009, '{"phone": "1234567890123456"}')$$);
SELECT regstage_test.hint($$SELECT regstage.stage_user_data(9009, '{"phone": "+1234567890123456"}')$$);
SELECT regstage_test.try(format($$SELECT regstage.stage_user_data(9009, '{"phone": "00%s"}')$$, repeat('9', 1000)));
SELECT regstage.staged(9009) AS nothing_written;
