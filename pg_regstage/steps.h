/*
 * steps.h — the order of a registration's steps: the one definition.
 *
 * A registration asks for the language, then the typed data items below in
 * this order, then the document types of regstage.required_documents in
 * their order.  missing() walks this list, the staging script of typed
 * answers receives it as its arguments (so Redis never holds an order of
 * its own), and the conversation asks whatever missing() names first.
 */
#ifndef REGSTAGE_STEPS_H
#define REGSTAGE_STEPS_H

/* The language is its own key; the typed items are fields of the data hash. */
#define REGSTAGE_STEP_LANGUAGE "language"

static const char *const regstage_text_steps[] = {"full_name", "phone"};

#define REGSTAGE_N_TEXT_STEPS lengthof(regstage_text_steps)

#endif
