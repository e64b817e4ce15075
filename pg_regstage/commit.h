/*
 * commit.h — commit_registration() and its after-commit Redis cleanup.
 */
#ifndef REGSTAGE_COMMIT_H
#define REGSTAGE_COMMIT_H

extern void commit_register_callbacks(void);

#endif
