// The Veil worker: owns the wasm client (device, model, key, each scheme's state) off the main
// thread. One module of operations per scheme under worker/; serve.js has the message loop.
import { adversarialOps } from './worker/adversarial.js';
import { coreOps } from './worker/core.js';
import { flowRotationOps } from './worker/flow-rotation.js';
import { owsdOps } from './worker/owsd.js';
import { serve } from './worker/serve.js';

serve({ ...coreOps, ...flowRotationOps, ...owsdOps, ...adversarialOps });
