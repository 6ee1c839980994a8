// SPDX-License-Identifier: AGPL-3.0-or-later
// The servers the comparison bench knows, by name. Each has a lifecycle (start, stop, kill -9,
// restart) and a protocol adapter (`client`) used by the shared workloads in core.mjs.

import { murmure, murmureTls } from './murmure.mjs';
import { ejabberd, prosody } from './xmpp.mjs';

export const SERVERS = { murmure, 'murmure-tls': murmureTls, prosody, ejabberd };
