-------------------------------------------------------------------------------
-- The bot's texts as this release ships them (en is the fallback for a key
-- missing in another language; {placeholders} are filled by the conversation).
-- Loaded at install and at every upgrade.
-------------------------------------------------------------------------------
INSERT INTO regstage.default_messages AS d (language, key, text) VALUES
('en', 'language_name', 'English'),
('en', 'choose_language', 'Welcome! Please choose your language.'),
('en', 'ask_full_name', 'Please send your full name (first and last name).'),
('en', 'bad_full_name', 'That does not look like a name. Use 2 to 128 letters, spaces, hyphens, apostrophes or dots.'),
('en', 'ask_phone', 'Please share your phone number with the button below, or type it in international format (+7 916 123-45-67).'),
('en', 'phone_button', '📱 Share my phone number'),
('en', 'bad_phone', 'That does not look like a phone number. Type it in international format, e.g. +7 916 123-45-67.'),
('en', 'not_your_contact', 'Please share your own contact, not someone else''s.'),
('en', 'phone_saved', 'Thank you, your phone number is saved.'),
('en', 'ask_doc:passport', 'Please send a photo of your passport or driving licence.'),
('en', 'ask_doc:selfie', 'Now please send a selfie.'),
('en', 'ask_doc', 'Please send a photo of your document: {doc}.'),
('en', 'expect_photo', 'Please send a photo (or an image or PDF as a file).'),
('en', 'expect_image', 'Please send a photo (or an image as a file).'),
('en', 'expect_text', 'Please send it as a text message.'),
('en', 'expect_language', 'Please choose a language with the buttons.'),
('en', 'registration_complete', 'Registration complete! Your application is under review.'),
('en', 'registration_failed', 'Something went wrong while saving your registration. Your data is kept — send /start to try again.'),
('en', 'continue_prompt', 'You have an unfinished registration. Continue where you left off?'),
('en', 'btn_continue', 'Continue'),
('en', 'btn_start_over', 'Start over'),
('en', 'status:PENDING', 'You are registered. Your application is under review.'),
('en', 'status:APPROVED', 'You are registered and your application is approved.'),
('en', 'status:REJECTED', 'You are registered, but your application was rejected.'),
('en', 'cancelled', 'Registration cancelled. Your staged data was deleted. Send /start to begin again.'),
('en', 'nothing_to_cancel', 'There is nothing to cancel. Send /start to register.'),
('en', 'unknown_action', 'That button is no longer valid.'),
('ru', 'language_name', 'Русский'),
('ru', 'choose_language', 'Добро пожаловать! Выберите язык.'),
('ru', 'ask_full_name', 'Отправьте ваше полное имя (имя и фамилию).'),
('ru', 'bad_full_name', 'Это не похоже на имя. Используйте от 2 до 128 букв, пробелы, дефисы, апострофы или точки.'),
('ru', 'ask_phone', 'Поделитесь номером телефона кнопкой ниже или введите его в международном формате (+7 916 123-45-67).'),
('ru', 'phone_button', '📱 Отправить мой номер'),
('ru', 'bad_phone', 'Это не похоже на номер телефона. Введите его в международном формате, например +7 916 123-45-67.'),
('ru', 'not_your_contact', 'Пожалуйста, отправьте свой собственный контакт.'),
('ru', 'phone_saved', 'Спасибо, номер сохранён.'),
('ru', 'ask_doc:passport', 'Отправьте фото паспорта или водительского удостоверения.'),
('ru', 'ask_doc:selfie', 'Теперь отправьте селфи.'),
('ru', 'ask_doc', 'Отправьте фото документа: {doc}.'),
('ru', 'expect_photo', 'Отправьте фото (или изображение либо PDF файлом).'),
('ru', 'expect_image', 'Отправьте фото (или изображение файлом).'),
('ru', 'expect_text', 'Отправьте это текстовым сообщением.'),
('ru', 'expect_language', 'Выберите язык кнопками.'),
('ru', 'registration_complete', 'Регистрация завершена! Ваша заявка на рассмотрении.'),
('ru', 'registration_failed', 'Что-то пошло не так при сохранении регистрации. Ваши данные сохранены — отправьте /start, чтобы попробовать снова.'),
('ru', 'continue_prompt', 'У вас есть незавершённая регистрация. Продолжить с того же места?'),
('ru', 'btn_continue', 'Продолжить'),
('ru', 'btn_start_over', 'Начать заново'),
('ru', 'status:PENDING', 'Вы зарегистрированы. Ваша заявка на рассмотрении.'),
('ru', 'status:APPROVED', 'Вы зарегистрированы, заявка одобрена.'),
('ru', 'status:REJECTED', 'Вы зарегистрированы, но заявка отклонена.'),
('ru', 'cancelled', 'Регистрация отменена, сохранённые данные удалены. Отправьте /start, чтобы начать заново.'),
('ru', 'nothing_to_cancel', 'Отменять нечего. Отправьте /start, чтобы зарегистрироваться.'),
('ru', 'unknown_action', 'Эта кнопка больше не действует.')
ON CONFLICT (language, key) DO UPDATE SET text = EXCLUDED.text;

-- A shipped key that is new here becomes a text; a text that is already
-- there (shipped earlier, or the DBA's) stays as it is.
INSERT INTO regstage.messages (language, key, text)
SELECT language, key, text FROM regstage.default_messages
ON CONFLICT (language, key) DO NOTHING;
