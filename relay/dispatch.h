/*
 * dispatch.h — per-chat ordering, worker connections, the offset watermark.
 */
#ifndef REGSTAGE_RELAY_DISPATCH_H
#define REGSTAGE_RELAY_DISPATCH_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

/*
 * Updates fetched but not yet confirmed, at most.  Enough for a backlog
 * after downtime to keep every worker busy across many chats, and for one
 * chat stuck in a long commit not to hold up the others (it would need 500
 * queued updates of its own); small enough that the queue stays ~0.2 MB.
 */
#define DISPATCH_MAX_INFLIGHT 500

bool		dispatch_start(int nworkers);
/*
 * The chat an update belongs to, in *chat_id; false when it has none (it is
 * then ordered with nothing else).  Exposed for the fuzz target.
 */
bool		dispatch_update_chat(json_t *update, int64_t *chat_id);
/* Queue an update (takes a reference); false if it was seen before. */
bool		dispatch_submit(json_t *update);
/* The getUpdates offset: one past the last update of a done prefix. */
int64_t		dispatch_offset(void);
int			dispatch_inflight(void);
/* Wait up to ms for an update to finish (or for room in the queue). */
void		dispatch_wait_progress(long ms);
/* Stop taking new work, let running updates finish, join the workers. */
void		dispatch_shutdown(void);

#endif
