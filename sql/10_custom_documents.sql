-- regstage.required_documents decides which documents the conversation asks
-- for, in that order; regstage.pdf_documents which of them take a PDF file.
-- (Uses the regstage_test helpers of 05_conversation.)
SET regstage.required_documents = 'licence,selfie,contract';
SELECT regstage_test.bot(regstage_test.text(2001, 20001, '/start', 'en'));
SELECT regstage_test.bot(regstage_test.callback(2002, 20001, 'lang:en'));
SELECT regstage_test.bot(regstage_test.text(2003, 20001, 'Anna Schmidt', 'en'));
SELECT regstage_test.bot(regstage_test.text(2004, 20001, '+49 151 2345 6789', 'en'));
SELECT regstage.missing(20001);
-- the licence as a PDF file: accepted (licence is in pdf_documents)
SELECT regstage_test.bot(regstage_test.document(2005, 20001, 'pdf_AgAClicence20001', 'application/pdf'));
-- a PDF as the selfie: refused, asked again
SELECT regstage_test.bot(regstage_test.document(2006, 20001, 'pdf_AgACselfie20001', 'application/pdf'));
SELECT regstage_test.bot(regstage_test.photo(2007, 20001, 'AgACselfie20001'));
SELECT regstage.missing(20001);
-- the last document commits the registration with all three
SELECT regstage_test.bot(regstage_test.document(2008, 20001, 'pdf_AgACcontract20001', 'application/pdf'));
SELECT d.doc_type, d.telegram_file_id, d.size_bytes > 0 AS has_bytes
  FROM regstage.documents d JOIN regstage.users u ON u.id = d.user_id
 WHERE u.telegram_id = 20001 ORDER BY d.id;
SELECT * FROM regstage_test.documents_ok(20001);
SELECT regstage.staged(20001) AS staged_after;

-- with contract taken out of pdf_documents, a PDF contract is refused
SET regstage.pdf_documents = 'licence';
SELECT regstage.stage_language(20002, 'en');
SELECT regstage.stage_user_data(20002, '{"full_name": "Ben Ode", "phone": "+441632960001"}');
SELECT regstage.stage_document(20002, 'licence', 'AgAClicence20002');
SELECT regstage.stage_document(20002, 'selfie', 'AgACselfie20002');
SELECT regstage_test.bot(regstage_test.document(2011, 20002, 'pdf_AgACcontract20002', 'application/pdf'));
SELECT regstage.missing(20002);
SELECT regstage.clear_registration(20002);
RESET regstage.pdf_documents;
RESET regstage.required_documents;
