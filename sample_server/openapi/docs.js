// Swagger UI on this server's own description. A script file rather than an inline script, so
// that the page's Content-Security-Policy can forbid inline scripts.
'use strict';
window.addEventListener('DOMContentLoaded', () => {
  window.ui = SwaggerUIBundle({
    url: '/openapi.json',
    dom_id: '#swagger-ui',
    // The base layout: no top bar with a box for loading another description.
    layout: 'BaseLayout',
    deepLinking: true,
    // Off: Swagger UI would send the description to validator.swagger.io for its badge.
    validatorUrl: null,
    // A key typed into "Authorize" stays in this tab's memory, never in localStorage.
    persistAuthorization: false,
    tryItOutEnabled: false,
  });
});
