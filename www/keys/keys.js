// The keys page: every control is in lib/keys-ui.js.
import { bindKeys } from '../lib/keys-ui.js';
import { startClient } from '../lib/rpc.js';

startClient().then(({ call, key }) => bindKeys(call, key)).catch(() => {});
