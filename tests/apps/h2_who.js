// An HTTP/2 server without TLS (prior knowledge, as h2c clients and Envoy speak it) that
// answers every request with its name: node h2_who.js ADDRESS PORT NAME
const http2 = require("http2");
const [address, port, name] = process.argv.slice(2);
http2
  .createServer((request, response) => response.end(`${name}\n`))
  .listen(Number(port), address, () => console.log("listening"));
