// images: see public/atelier.js
