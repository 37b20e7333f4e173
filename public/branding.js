// branding: see public/atelier.js
