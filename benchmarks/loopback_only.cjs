// Preloaded into the Portkey gateway (node --require): its start script listens on every
// interface and has no option to choose one, so every listen() here is pinned to 127.0.0.1.
const net = require('net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number' || typeof args[0] === 'string') {
    const rest = args.slice(1).filter((a) => typeof a === 'function' || typeof a === 'number');
    return listen.call(this, args[0], '127.0.0.1', ...rest);
  }
  if (args[0] && typeof args[0] === 'object') args[0] = { ...args[0], host: '127.0.0.1' };
  return listen.apply(this, args);
};
