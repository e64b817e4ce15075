/*
 * worker.h — the orphan-cleanup background worker.
 */
#ifndef REGSTAGE_WORKER_H
#define REGSTAGE_WORKER_H

extern void worker_register(void);

#endif
