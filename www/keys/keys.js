// The keys page: every control is in keys-ui.js.
import { startClient } from './common.js';
import { bindKeys } from './keys-ui.js';

startClient().then(({ call, key }) => bindKeys(call, key)).catch(() => {});
