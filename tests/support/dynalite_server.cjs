// dynalite (a DynamoDB emulator) on 127.0.0.1 and an ephemeral port for a test: prints
// {"port": N} once listening and stops when its stdin closes, so it never outlives the test.
const dynalite = require('dynalite');

const server = dynalite({ createTableMs: 0, deleteTableMs: 0, updateTableMs: 0 });
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n');
});
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
